"""The pretrain log line keeps Megatron-LM's fields, widths and formats."""

from training.logging_utils import format_iteration_line, format_validation_line


def test_iteration_line_matches_megatron_widths():
    line = format_iteration_line(5, 100, 40, 123.44, 1e-3, 8, 5.123456, 1.0, 1.2345, None, 0, 0,
                                 tokens_per_sec=2048.0, timestamp="2026-01-02 03:04:05")
    assert line == (" [2026-01-02 03:04:05] iteration        5/     100 | consumed samples:           40 |"
                    " elapsed time per iteration (ms): 123.4 | learning rate: 1.000000E-03 | global batch size:     8 |"
                    " lm loss: 5.123456E+00 | loss scale: 1.0 | grad norm: 1.234 | number of skipped iterations:   0 |"
                    " number of nan iterations:   0 | throughput (tokens/s): 2048.0 |")


def test_no_loss_field_when_every_step_was_skipped_and_num_zeros_when_logged():
    line = format_iteration_line(2, 2, 4, 1.0, 0.0, 2, None, 65536.0, None, 12.0, 2, 1)
    assert "lm loss" not in line and "grad norm" not in line
    assert " loss scale: 65536.0 | num zeros: 12.0 | number of skipped iterations:   2 | number of nan iterations:   1 |" in line


def test_max_attention_logit_field_only_when_given():
    args = (4, 8, 16, 2.0, 1e-3, 4, 3.5, 1.0, 0.5, None, 0, 0)
    without = format_iteration_line(*args, tokens_per_sec=10.0, timestamp="t")
    with_field = format_iteration_line(*args, tokens_per_sec=10.0, timestamp="t", max_attention_logit=12.34567)
    assert "attention" not in without
    assert with_field == without.replace(" grad norm: 0.500 |", " grad norm: 0.500 | max attention logit: 12.346 |")
    assert " max attention logit: nan |" in format_iteration_line(*args, max_attention_logit=float("nan"))


def test_validation_line():
    text = format_validation_line("iteration 10", 2.0)
    bar, middle, bar2 = text.split("\n")
    assert middle == " validation loss at iteration 10 | lm loss value: 2.000000E+00 | lm loss PPL: 7.389056E+00 | "
    assert bar == bar2 == "-" * (len(middle) + 1)
