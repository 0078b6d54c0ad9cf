import sys

from app.cli.bench import main

sys.exit(main())
