import sys

from airflow_nodes.cli import main

sys.exit(main())
