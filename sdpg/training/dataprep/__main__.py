from sdpg.cli import data_main

raise SystemExit(data_main())
