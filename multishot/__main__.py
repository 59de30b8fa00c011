from multishot.cli import main

raise SystemExit(main())
