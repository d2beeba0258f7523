"""`python -m pipeline` is the same as the `rtsp-pipeline` command."""
import sys

from pipeline.launch import main

sys.exit(main())
