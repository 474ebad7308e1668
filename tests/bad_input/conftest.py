"""The bad-input catalogue runs ``fewshot`` in real processes; ``bad_input_harness`` judges each case."""
