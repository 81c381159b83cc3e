"""A trial's process does not shut its interpreter down while TensorFlow trains in a
daemon thread (the native crash dump of trainables.stopping)."""

import subprocess
import sys
import textwrap

# A process shaped like a stopped trial's: the training runs in a daemon thread (as in
# Tune's function trainables), tracing tf.data functions (where the dump was seen) until
# asked to stop, then takes a moment to end its call; the main thread returns at once.
TRIAL = textwrap.dedent("""
    import threading, time
    from trainables.notices import import_tensorflow
    from trainables.stopping import ends_before_exit

    tf = import_tensorflow()
    stop, tracing = threading.Event(), threading.Event()

    def train():
        with ends_before_exit(stop, wait_s=60):
            while not stop.is_set():
                ds = tf.data.Dataset.range(100).map(lambda x: tf.sin(tf.cast(x, tf.float32)) * 2.0)
                for _ in ds.take(2):
                    pass
                tracing.set()
            time.sleep(0.5)  # the rest of its compiled call
            print("training ended", flush=True)

    threading.Thread(target=train, daemon=True).start()
    assert tracing.wait(60)
""")


def test_an_exiting_trial_process_waits_for_its_training_to_end():
    """Without the wait, Python ends the daemon thread mid-call at shutdown: "training
    ended" never prints, and in about a third of the exits measured TensorFlow's bindings
    abort ("FATAL: exception not rethrown", exit 134)."""
    done = subprocess.run([sys.executable, "-c", TRIAL], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == "training ended\n", (done.stdout, done.stderr[-3000:])
    assert "terminate" not in done.stderr and "Fatal" not in done.stderr, done.stderr[-3000:]
