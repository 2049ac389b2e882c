"""`python -m deepcourse` (what `accelerate launch -m deepcourse run ...` calls)."""
from deepcourse.cli.main import main

if __name__ == "__main__":
    main(prog_name="deepcourse")
