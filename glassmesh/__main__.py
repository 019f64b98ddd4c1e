from glassmesh.cli.main import main

main()
