"""Model side: ViT backbone, position embeddings, attention masks, heads, attentive probe."""
