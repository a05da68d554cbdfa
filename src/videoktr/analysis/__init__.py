"""Analysis tools: metrics of models on the synthetic video world (`analysis.world`)."""
