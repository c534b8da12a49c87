from oscar_manager.cli import main

main()
