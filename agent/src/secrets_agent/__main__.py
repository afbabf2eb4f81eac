import sys

from secrets_agent.cli import main

sys.exit(main())
