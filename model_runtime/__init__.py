"""model_runtime"""
