import os
import sys

from regx.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # Under torchrun, leave without the interpreter's teardown: gloo's threads, torn down there, can
    # abort the process after the run has finished and saved everything (and torchrun then stops
    # the other ranks). Files and streams are flushed first.
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
