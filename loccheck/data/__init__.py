"""The data a claim is tested on: preference pairs and their split by question (TruthfulQA, JSONL,
known facts), the side-effect texts, and the prompt formats that turn them into token ids.
Torch-free."""
