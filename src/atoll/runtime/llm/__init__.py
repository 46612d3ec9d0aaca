"""Language-model providers behind one streaming interface."""
