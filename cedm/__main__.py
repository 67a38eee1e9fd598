from cedm.cli import main

raise SystemExit(main())
