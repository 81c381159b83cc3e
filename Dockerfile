# Head and worker image for the hpsearch Ray cluster (helm/hpsearch), one per accelerator:
#
#   docker build --build-arg ACCELERATOR=cpu|gpu|tpu -t REGISTRY/hpsearch:0.1.0-ray2.60.0-<kind> .
#
# The base is the rayproject/ray image of the Ray version pyproject.toml pins, so the
# cluster, the driver and the workers run one Ray. TensorFlow comes from the project's
# extra of the same name, in the one install (pyproject.toml):
#   cpu  tensorflow-cpu 2.21.0
#   gpu  tensorflow[and-cuda] 2.21.0, on the CUDA base image
#   tpu  tensorflow-tpu 2.20.0 (PyPI's newest) with libtpu 0.0.14, the release its
#        metadata names (pinned: libtpu~=0.0.14 would allow any later 0.0.x). Not run on TPU
#        hardware yet.
# The project lives in /home/ray/hpsearch, the working directory of the image: a RayJob
# runs `python -m search run --config configs/...` from there, and `ray job submit
# --working-dir .` runs the uploaded copy of the same tree instead.
ARG RAY_VERSION=2.60.0
ARG ACCELERATOR=cpu

FROM rayproject/ray:${RAY_VERSION}-py311-cpu AS base-cpu
FROM rayproject/ray:${RAY_VERSION}-py311-gpu AS base-gpu
FROM rayproject/ray:${RAY_VERSION}-py311-cpu AS base-tpu

# hadolint ignore=DL3006
FROM base-${ACCELERATOR}
ARG ACCELERATOR
ENV TF_CPP_MIN_LOG_LEVEL=2
WORKDIR /home/ray/hpsearch
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users search ./search
COPY --chown=ray:users trainables ./trainables
COPY --chown=ray:users cluster ./cluster
COPY --chown=ray:users configs ./configs
COPY --chown=ray:users docs ./docs
# The project itself, whose pyproject.toml pins every version it installs.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[${ACCELERATOR}]" \
 && python -c "import search.run, trainables.train, cluster.jobs, tensorflow, keras, ray; print(ray.__version__)"
# ray, the base image's user (uid 1000, the chart's runAsUser)
USER 1000
