"""Seller-intent conflict evaluation."""
