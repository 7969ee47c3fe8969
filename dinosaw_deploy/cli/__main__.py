from dinosaw_deploy.cli.main import main

main()
