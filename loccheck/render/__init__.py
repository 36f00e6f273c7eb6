"""What every part of the evidence report is written with, from the result dict alone: number and
table formatting (`format`) and the figures' common style and deterministic PNG writing
(`figures`, matplotlib imported there). The report's common sections (`loccheck.report`) and
each edit method's and heuristic's own section use it; it imports only the ground."""
