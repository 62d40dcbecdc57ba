from mainspring._cli import main

main()
