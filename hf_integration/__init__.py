"""Hugging Face integration for indrnn-triton (IndRNN models for the Auto classes)."""
