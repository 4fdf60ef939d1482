"""Helpers the tests share (fixtures, stand-in stages and workers, the import graph); no tests here."""
