import sys

from sfv_jax.cli import main

sys.exit(main())
