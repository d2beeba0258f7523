"""`python -m pipeline` is the same as the `rtsp-pipeline` command."""
import sys

from pipeline.cli import main

sys.exit(main())
