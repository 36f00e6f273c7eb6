"""Studies that use loccheck's stages for a paper's question beyond one claim's verdict."""
