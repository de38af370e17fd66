"""The hostile-input and fault suite (issue 11): see docs/hostile-input.md."""
