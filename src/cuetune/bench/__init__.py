"""`cuetune bench`: a grid of tasks x methods x K x seeds under the LM-BFF protocol, run in
order, in shards or on Ray, with its reports."""
