from ccvault.cli import main

main()
