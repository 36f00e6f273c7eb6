"""Hase et al.'s question: does where causal tracing localizes a fact predict where editing it works?
`command` runs the study, `regression` fits the explained variance, `report` writes it."""
