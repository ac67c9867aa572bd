from .cli import main

main(prog_name="flashcore-cupy")
