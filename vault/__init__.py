"""TokenVault domain: tokens, envelope crypto, policy, audit, storage.

This package never imports Flask or hvac: HTTP lives in api/, key providers in kms/.
"""
