"""Stand-alone scripts (benchmarks, checks, converters); a package so ``tools.*`` imports never resolve elsewhere."""
