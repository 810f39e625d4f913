import sys

from consumer.ops.cli import main

sys.exit(main())
