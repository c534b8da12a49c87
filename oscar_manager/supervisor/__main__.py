from oscar_manager.supervisor.cli import main

main()
