from fda.cli import main

raise SystemExit(main())
