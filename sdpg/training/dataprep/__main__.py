from sdpg.commands import data_main

raise SystemExit(data_main())
