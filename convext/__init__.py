"""convext"""
