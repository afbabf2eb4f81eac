"""AWS Secrets Manager and SSM Parameter Store backends (aioboto3), provider-compatible naming."""
