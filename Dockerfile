# Worker and head image for the hpsearch Ray cluster (helm/hpsearch).
#
#   docker build --build-arg ACCELERATOR=cpu|gpu|tpu -t REGISTRY/hpsearch:0.1.0-ray2.60.0-<kind> .
#
# The base is the rayproject/ray image of the Ray version pyproject.toml pins, so the
# cluster, the driver and the workers run one Ray. TensorFlow per accelerator:
#   cpu  tensorflow-cpu 2.21.0 (the project's own pin)
#   gpu  tensorflow[and-cuda] 2.21.0 on the CUDA base image
#   tpu  tensorflow-tpu 2.20.0, the newest on PyPI (no 2.21 build exists); it replaces
#        tensorflow-cpu, and libtpu comes from Google's release index.
ARG RAY_VERSION=2.60.0
ARG ACCELERATOR=cpu

FROM rayproject/ray:${RAY_VERSION}-py311-cpu AS base-cpu
FROM rayproject/ray:${RAY_VERSION}-py311-gpu AS base-gpu
FROM rayproject/ray:${RAY_VERSION}-py311-cpu AS base-tpu

FROM base-${ACCELERATOR}
ARG ACCELERATOR
ENV TF_CPP_MIN_LOG_LEVEL=2 \
    PIP_NO_CACHE_DIR=1
WORKDIR /home/ray/hpsearch
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users search ./search
COPY --chown=ray:users trainables ./trainables
COPY --chown=ray:users cluster ./cluster
COPY --chown=ray:users configs ./configs
RUN pip install . \
 && if [ "$ACCELERATOR" = "gpu" ]; then \
        pip uninstall -y tensorflow-cpu && pip install "tensorflow[and-cuda]==2.21.0"; \
    elif [ "$ACCELERATOR" = "tpu" ]; then \
        pip uninstall -y tensorflow-cpu && pip install "tensorflow-tpu==2.20.0" \
            -f https://storage.googleapis.com/libtpu-releases/index.html; \
    fi \
 && python -c "import search, trainables, cluster, tensorflow, keras, ray; print(ray.__version__)"
USER ray
