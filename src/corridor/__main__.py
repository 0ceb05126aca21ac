from corridor.start import main

main()
