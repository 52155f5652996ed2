from voiceai.cli import main

raise SystemExit(main())
