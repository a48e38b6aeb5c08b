"""ModelAdmins of djcelery_ops; actions call service functions and hold no logic."""
