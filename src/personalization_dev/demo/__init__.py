"""The end-to-end demo: real KJV content, a simulated population, the whole pipeline."""
