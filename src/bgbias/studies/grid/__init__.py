"""The paper's full grid: datasets x losses x modes, locally or on Ray."""
