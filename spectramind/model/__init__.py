"""The one model definition. Arrives with the model issue."""
