from nlpseq.cli import main

main()
