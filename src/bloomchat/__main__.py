from bloomchat.cli import main

raise SystemExit(main())
