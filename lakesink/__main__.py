from lakesink.cli import main

main()
