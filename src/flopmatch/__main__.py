"""``python -m flopmatch ...`` is the ``flopmatch`` command; multi-GPU training runs it under accelerate:
``accelerate launch --config_file examples/accelerate/deepspeed_zero3.yaml -m flopmatch train ...``."""

from flopmatch.cli import main

if __name__ == "__main__":
    main()
