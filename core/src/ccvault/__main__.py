from ccvault.entry import main

main()
