"""The HMAC key the test workers and the test process share."""
TEST_KEY = "piston-test-key-" + "0123456789abcdef" * 2
