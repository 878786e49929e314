"""RICE pretraining: region-aware cluster discrimination for RICE-ViT encoders.

The pipeline, one module per step: a region manifest (`region_manifest`, `regions`), region
features of the crops (`features`), k-means cluster labels (`kmeans`) and OCR token labels
(`ocr_labels`), packed region batches (`batches`), the sharded margin softmax loss
(`margin_loss`), the training loop with exact resume (`train`, `checkpoint`, `config`), the
evaluation of region embeddings (`evaluate`) and a synthetic end-to-end run (`synthetic`,
`demo`). `pipeline` chains the steps from file to file; the `rice-vit pretrain` commands
(`cli`) run each of them.
"""
